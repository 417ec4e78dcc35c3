"""SAEs in the playground: the Features tab's routes and steering through the completions API.

`mygpt2 serve --sae_dir DIR[,DIR]` registers SAEs that a completion may steer with;
`--features DIR[,DIR]` (directories `mygpt2 inspect features` wrote) gives the Features tab its
reports, and registers each report's SAE for steering too. Both are checked against the model
at start (`mygpt2.sae.check_fits`), so a misfit stops the server before it listens.

Routes (added to the application by `create_app(..., saes=...)`):
    GET /api/saes                          the registered SAEs: name, hook, sizes, has a report
    GET /api/features?sae=NAME&q=QUERY     features matching an id or a token (summaries)
    GET /api/features/{id}?sae=NAME        one feature's whole record from the report

Steering is the completions extension field `steer`: a list of
`{"sae": NAME, "feature": F, "alpha": A}` where NAME is a registered SAE's directory as given at
start, or any path to it. Bad entries (shape, an unknown SAE, a feature out of range, an SAE
whose hook does not fit the model) are 400s naming `steer`, checked before the first token
(also for streamed requests, whose headers are not sent yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mygpt2.errors import MyGPT2Error
from mygpt2.serve.completions import APIError

SUMMARIES = 50  # features one search answers


@dataclass
class SAEs:
    """The SAEs a server holds, by name (the directory as given at start), with the paths that
    name each, and the browse reports of those that have one."""

    saes: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # resolved path -> name

    def add_sae(self, directory: str, model: Any) -> str:
        """Load the SAE in `directory`, check it fits `model`, and register it; its name."""
        from mygpt2.sae import check_fits, load

        resolved = str(Path(directory).resolve())
        if resolved in self.aliases:
            return self.aliases[resolved]
        sae = load(directory)
        check_fits(model, sae)
        self.saes[directory] = sae.to(model.transformer.wte.weight.device)
        self.aliases[resolved] = directory
        return directory

    def add_report(self, directory: str, model: Any) -> str:
        """Read `directory/features.json` (from `mygpt2 inspect features`) and register it with
        its SAE; the SAE's name."""
        path = Path(directory) / "features.json"
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            sae_dir, features = report["sae_dir"], report["features"]
            if not isinstance(sae_dir, str) or not isinstance(features, list):
                raise TypeError
        except FileNotFoundError:
            raise MyGPT2Error(
                f"--features '{directory}' holds no features.json; write one with mygpt2 "
                "inspect features --out DIR."
            ) from None
        except (ValueError, KeyError, TypeError, OSError):
            raise MyGPT2Error(
                f"'{path}' is not a report of mygpt2 inspect features; write it again."
            ) from None
        name = self.add_sae(sae_dir, model)
        self.reports[name] = report
        return name

    def name_of(self, given: str) -> str | None:
        """The registered name that `given` (a name or a path) means, or None."""
        if given in self.saes:
            return given
        return self.aliases.get(str(Path(given).resolve())) if given else None

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "sae": name,
                "hook": sae.cfg.hook_name,
                "d_in": sae.cfg.d_in,
                "d_sae": sae.cfg.d_sae,
                "architecture": sae.cfg.architecture,
                "report": name in self.reports,
            }
            for name, sae in self.saes.items()
        ]


def _bad(message: str) -> APIError:
    return APIError(400, f"'steer': {message}", param="steer", code="invalid_value")


def resolve_steer(saes: SAEs | None, steer: list[tuple[str, int, float]]) -> list[tuple]:
    """(sae, feature, alpha) entries for `generate_stream`, from the names a request sent."""
    from mygpt2.sae.model import check_feature  # the one feature check

    out = []
    for sae_name, feature, alpha in steer:
        name = saes.name_of(sae_name) if saes is not None else None
        if name is None:
            known = ", ".join(saes.saes) if saes is not None and saes.saes else ""
            hint = f" Registered: {known}." if known else " Start the server with --sae_dir DIR."
            raise _bad(f"no SAE '{sae_name}' is registered with this server.{hint}")
        sae = saes.saes[name]
        try:
            check_feature(feature, sae.cfg.d_sae)
        except MyGPT2Error as e:
            raise _bad(f"SAE '{name}': {e}") from None
        out.append((sae, feature, alpha))
    return out


def check_steer(model: Any, saes: SAEs | None, steer: list[tuple[str, int, float]]) -> None:
    """Every entry resolved and its hooks checked against `model` (on the model's thread)."""
    from mygpt2.generate import steering_hooks

    try:
        steering_hooks(model, resolve_steer(saes, steer))
    except MyGPT2Error as e:
        raise _bad(str(e)) from None


# --------------------------------------------------------------------------- the Features tab
def _summary(f: dict[str, Any]) -> dict[str, Any]:
    top = f["contexts"][0] if f["contexts"] else None
    return {
        "id": f["id"],
        "density": f["density"],
        "max": f["max"],
        "fires_on": top["tokens"][top["at"]] if top else None,
        "promotes": f["promotes"][0]["token"] if f["promotes"] else None,
    }


def find_features(saes: SAEs | None, sae: str, query: str) -> dict[str, Any]:
    """GET /api/features: the features of `sae`'s report matching `query` (an id or a token;
    empty: the strongest features), as summaries."""
    from mygpt2.sae.features import search

    report = _report(saes, sae)
    by_id = {f["id"]: f for f in report["features"]}
    if query:
        ids = search(report, query, limit=SUMMARIES)
    else:
        live = sorted((f for f in report["features"] if f["count"]), key=lambda f: -f["max"])
        ids = [f["id"] for f in live[:SUMMARIES]]
    return {
        "sae": sae,
        "hook": report["hook"],
        "tokens": report["tokens"],
        "logits": report["logits"],
        "histogram_edges": report["histogram_edges"],
        "features": [_summary(by_id[i]) for i in ids],
    }


def one_feature(saes: SAEs | None, sae: str, ident: str) -> dict[str, Any]:
    """GET /api/features/{id}: one feature's record from `sae`'s report."""
    report = _report(saes, sae)
    if not ident.isdigit():
        raise APIError(400, f"a feature id is a whole number, got {ident!r}.", param="id")
    found = [f for f in report["features"] if f["id"] == int(ident)]
    if not found:
        d_sae = report["d_sae"]
        inside = int(ident) < d_sae
        why = "is not in this report" if inside else f"is out of range (0 to {d_sae - 1})"
        raise APIError(404, f"feature {ident} {why}.", param="id", code="not_found")
    return {"sae": sae, "histogram_edges": report["histogram_edges"], **found[0]}


def _report(saes: SAEs | None, given: str) -> dict[str, Any]:
    name = saes.name_of(given) if saes is not None else None
    if name is None or name not in saes.reports:
        have = [n for n in (saes.reports if saes else {})]
        hint = f" Reports: {', '.join(have)}." if have else " Start with --features DIR."
        raise APIError(404, f"no feature report for SAE '{given}'.{hint}", param="sae")
    return saes.reports[name]


def feature_routes(saes: SAEs | None, guard: Any) -> list[Any]:
    """The Features tab's routes; `guard(request)` is the application's host and key check."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def listing(request: Request) -> Response:
        guard(request)
        return JSONResponse({"saes": saes.listing() if saes is not None else []})

    async def search_route(request: Request) -> Response:
        guard(request)
        q = request.query_params
        return JSONResponse(find_features(saes, q.get("sae", ""), q.get("q", "")))

    async def feature_route(request: Request) -> Response:
        guard(request)
        sae = request.query_params.get("sae", "")
        return JSONResponse(one_feature(saes, sae, request.path_params["ident"]))

    return [
        Route("/api/saes", listing),
        Route("/api/features", search_route),
        Route("/api/features/{ident}", feature_route),
    ]
