"""BlockPairDataset and the loaders, checked against brute-force constructions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mygpt2.config import Config
from mygpt2.data import (
    IGNORE_INDEX,
    BlockPairDataset,
    Construct_data_loaders,
    TrainLoader,
    accum_steps,
    construct_data_loaders,
    padding_id,
)
from mygpt2.errors import MyGPT2Error

PAD = 7


def memmap_tokens(tmp_path, n: int, dtype=np.uint16) -> np.memmap:
    """n distinct-ish token ids in a file, opened the way training opens them."""
    path = tmp_path / f"tokens-{n}.bin"
    (np.arange(n) * 3 % 60000).astype(dtype).tofile(path)
    return np.memmap(path, dtype=dtype, mode="r")


def brute_force_pairs(tokens: np.ndarray, T: int) -> list[tuple[list[int], list[int]]]:
    """The original semantics written out the long way."""
    pairs = []
    for s in range(0, len(tokens) - 1, T):
        chunk = [int(t) for t in tokens[s : s + T + 1]]
        x, y = chunk[:-1], chunk[1:]
        x += [PAD] * (T - len(x))
        y += [IGNORE_INDEX] * (T - len(y))
        pairs.append((x, y))
    return pairs


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), T=st.integers(1, 40))
def test_blocks_match_brute_force(n: int, T: int) -> None:
    tokens = (np.arange(n) * 7 % 1000).astype(np.uint16)
    ds = BlockPairDataset(tokens, T, pad_id=PAD)
    expected = brute_force_pairs(tokens, T)
    assert len(ds) == len(expected)
    for i, (x, y) in enumerate(expected):
        got_x, got_y = ds[i]
        assert got_x.dtype == got_y.dtype == torch.int64
        assert got_x.tolist() == x and got_y.tolist() == y


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 300),
    T=st.integers(1, 40),
    shuffle=st.booleans(),
    passes=st.integers(1, 3),
    data=st.data(),
)
def test_a_batch_is_its_items_stacked(n: int, T: int, shuffle: bool, passes: int, data) -> None:
    """`BlockPairDataset.batch` (one gather when the blocks are whole) gives exactly what
    stacking the items one by one gives: shuffled or not, over several passes, with the
    padded last block among them."""
    tokens = (np.arange(n) * 7 % 1000).astype(np.uint16)
    ds = BlockPairDataset(tokens, T, pad_id=PAD, shuffle=shuffle, seed=3)
    ds = BlockPairDataset(tokens, T, len(ds) * passes, pad_id=PAD, shuffle=shuffle, seed=3)
    first = data.draw(st.integers(0, len(ds) - 1))
    indices = range(first, data.draw(st.integers(first + 1, len(ds))))
    x, y = ds.batch(indices)
    assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x, torch.stack([ds[i][0] for i in indices]))
    assert torch.equal(y, torch.stack([ds[i][1] for i in indices]))


def test_a_batch_past_the_end_raises_as_an_item_does() -> None:
    ds = BlockPairDataset(np.arange(50, dtype=np.uint16), 8, pad_id=PAD)
    with pytest.raises(IndexError, match="outside"):
        ds.batch(range(len(ds) - 1, len(ds) + 1))


def test_padding_only_on_last_block_and_targets_ignored(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 25)
    ds = BlockPairDataset(tokens, 8, pad_id=PAD)
    assert list(ds.starts) == [0, 8, 16]
    x, y = ds[2]  # tokens 16..24: 9 tokens, so 8 real inputs and 8 real targets
    assert (y != IGNORE_INDEX).all()
    tokens = memmap_tokens(tmp_path, 20)
    ds = BlockPairDataset(tokens, 8, pad_id=PAD)
    x, y = ds[2]  # tokens 16..19: 3 real pairs, 5 padded
    assert x[3:].tolist() == [PAD] * 5 and y[3:].tolist() == [IGNORE_INDEX] * 5
    assert x[:3].tolist() == tokens[16:19].tolist() and y[:3].tolist() == tokens[17:20].tolist()
    # -100 really is ignored by the loss
    logits = torch.randn(8, 60000)
    full = torch.nn.functional.cross_entropy(logits[:3], y[:3])
    assert torch.allclose(torch.nn.functional.cross_entropy(logits, y), full)


def test_reads_the_memmap_without_copying(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 1000)
    ds = BlockPairDataset(tokens, 16)
    assert ds.tokens is tokens


def test_length_repeats_modulo(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 100)
    ds = BlockPairDataset(tokens, 10, length=35, pad_id=PAD)
    n = len(ds.starts)
    assert n == 10 and len(ds) == 35
    for i in range(35):
        assert torch.equal(ds[i][0], ds[i % n][0]) and torch.equal(ds[i][1], ds[i % n][1])
    with pytest.raises(IndexError):
        ds[35]


def test_shuffle_is_a_seeded_permutation_per_pass(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 500)
    ds = BlockPairDataset(tokens, 10, length=150, shuffle=True, seed=3)
    n = len(ds.starts)
    passes = [[ds.start(p * n + j) for j in range(n)] for p in range(3)]
    for order in passes:
        assert sorted(order) == list(ds.starts)  # every block exactly once per pass
    assert passes[0] != passes[1] != passes[2]
    again = BlockPairDataset(tokens, 10, length=150, shuffle=True, seed=3)
    assert [again.start(i) for i in range(150)] == [ds.start(i) for i in range(150)]
    other = BlockPairDataset(tokens, 10, length=150, shuffle=True, seed=4)
    assert [other.start(i) for i in range(n)] != passes[0]
    # random access in any order gives the same answer as sequential access
    assert [ds.start(i) for i in reversed(range(150))] == [ds.start(i) for i in range(150)][::-1]


def make_cfg(**train) -> Config:
    cfg = Config()
    cfg.model.T = 8
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def all_batches(loader: TrainLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ddp_shards_are_disjoint_and_cover_the_global_batch(tmp_path, world_size, shuffle) -> None:
    tokens = memmap_tokens(tmp_path, 400)
    cfg = make_cfg(batch_size=2, macro_batch_size=8, max_steps=7, shuffle=shuffle, seed=5)
    single, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    assert single.accum == 4 and len(single) == 28
    ranks = [
        construct_data_loaders(cfg, tokens, tokens, PAD, rank=r, world_size=world_size)[0]
        for r in range(world_size)
    ]
    accum = 4 // world_size
    for step in range(cfg.train.max_steps):
        items = [
            i for loader in ranks for m in range(accum) for i in loader.indices(step * accum + m)
        ]
        assert len(set(items)) == len(items) == 8  # disjoint
        expected = [i for m in range(4) for i in single.indices(step * 4 + m)]
        assert sorted(items) == sorted(expected)  # union is the single-process macro batch
    # and the tensors agree too: rank-major concatenation is the single-process order
    single_x = torch.cat([x for x, _ in all_batches(single)])
    per_rank = [all_batches(loader) for loader in ranks]
    joined = [
        per_rank[r][step * accum + m][0]
        for step in range(cfg.train.max_steps)
        for r in range(world_size)
        for m in range(accum)
    ]
    assert torch.equal(torch.cat(joined), single_x)


def test_macro_batch_must_divide(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 400)
    cfg = make_cfg(batch_size=3, macro_batch_size=8)
    with pytest.raises(MyGPT2Error, match="multiple of batch_size"):
        construct_data_loaders(cfg, tokens, tokens, PAD)
    cfg = make_cfg(batch_size=2, macro_batch_size=8)
    with pytest.raises(MyGPT2Error, match="multiple"):
        construct_data_loaders(cfg, tokens, tokens, PAD, rank=0, world_size=3)


def test_accum_steps_and_indivisible_batch() -> None:
    assert accum_steps(4, 32) == 8
    assert accum_steps(4, 32, world_size=2) == 4
    with pytest.raises(MyGPT2Error, match=r"multiple of batch_size.*--macro_batch_size 28"):
        accum_steps(4, 30)
    with pytest.raises(MyGPT2Error, match=r"x processes \(3\) = 12.*--macro_batch_size 12"):
        accum_steps(4, 8, world_size=3)


def test_the_loader_owns_the_accumulation_count(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 400)
    cfg = make_cfg(batch_size=2, macro_batch_size=8)
    assert construct_data_loaders(cfg, tokens, tokens, PAD)[0].accum == 4
    assert construct_data_loaders(cfg, tokens, tokens, PAD, 1, 2)[0].accum == 2


def test_padding_id_comes_from_the_prepared_meta(tmp_path) -> None:
    """The id that pads short blocks is what preparation recorded; meta.json files written
    before it recorded one fall back to the tokenizer's newline."""
    from mygpt2.prepare import open_prepared, prepare
    from mygpt2.tokenizer import RegexTokenizer

    text = "To be, or not to be:\nthat is the question.\n" * 40
    tok = RegexTokenizer().train(text, 280)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    cfg = Config()
    cfg.data.data, cfg.data.cache_dir = str(tmp_path / "corpus.txt"), str(tmp_path / "cache")
    directory = prepare(cfg, tok, progress=False)
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    newline = tok.encode_ordinary("\n")[0]
    assert padding_id(meta, tok) == meta["newline_id"] == newline
    assert padding_id({**meta, "newline_id": 123}, tok) == 123  # meta wins over the tokenizer
    del meta["newline_id"]  # as an older mygpt2 wrote it
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    train, val, old_meta = open_prepared(cfg, tok)  # old token files keep loading
    assert padding_id(old_meta, tok) == newline
    cfg.model.T = len(val) // 2 + 1  # two val blocks, the second one short
    _, val_loader = construct_data_loaders(cfg, train, val, padding_id(old_meta, tok))
    x, y = next(iter(val_loader))
    short = cfg.model.T - (len(val) - 1 - cfg.model.T)  # padded positions of the second
    assert x[1, -short:].tolist() == [newline] * short
    assert y[1, -short:].tolist() == [IGNORE_INDEX] * short


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_sees_exactly_the_uninterrupted_batches(tmp_path, shuffle) -> None:
    tokens = memmap_tokens(tmp_path, 300)
    cfg = make_cfg(batch_size=2, macro_batch_size=4, max_steps=20, shuffle=shuffle, seed=9)
    reference = all_batches(construct_data_loaders(cfg, tokens, tokens, PAD)[0])
    assert len(reference) == 40  # more than the 38 blocks: the run repeats the corpus
    first, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    it = iter(first)
    for _ in range(13):  # stop mid-step, as a crash would
        next(it)
    state = first.state_dict()
    assert state["position"] == 13
    resumed, _ = Construct_data_loaders(cfg, tokens, tokens, PAD)
    resumed.load_state_dict(state)
    rest = all_batches(resumed)
    assert len(rest) == 27
    for (x, y), (rx, ry) in zip(rest, reference[13:], strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_with_more_processes_at_a_step_boundary(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 300)
    cfg = make_cfg(batch_size=2, macro_batch_size=8, max_steps=6, shuffle=True)
    single, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    for _ in range(8):  # two whole steps of 4 micro-batches
        single.next_batch()
    state = single.state_dict()
    ranks = [construct_data_loaders(cfg, tokens, tokens, PAD, r, 2)[0] for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(state)
        assert loader.position == 4  # two steps of 2 micro-batches each
    expected = [single.indices(p) for p in range(8, 12)]
    got = [ranks[r].indices(ranks[r].position + m) for r in range(2) for m in range(2)]
    assert [list(i) for i in got] == [list(i) for i in expected]
    single.next_batch()  # now mid-step: cannot be re-cut for two processes
    with pytest.raises(MyGPT2Error, match="middle of a step"):
        ranks[0].load_state_dict(single.state_dict())
    cfg.run.seed += 1
    other, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    with pytest.raises(MyGPT2Error, match="seed"):
        other.load_state_dict(state)


def test_training_length_and_single_pass(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 300)  # 38 blocks of T=8
    cfg = make_cfg(batch_size=2, macro_batch_size=4, max_steps=50, shuffle=True)
    train, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    assert train.steps == 50 and len(train.dataset) == 200 and len(train) == 100
    cfg.train.single_pass = True
    train, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    assert train.steps == 9 and len(train) == 18  # 38 // 4 steps; 2 leftover blocks dropped
    seen = [train.dataset.start(i) for p in range(len(train)) for i in train.indices(p)]
    assert len(seen) == len(set(seen)) == 36  # no block twice
    cfg.train.macro_batch_size = 64
    cfg.train.batch_size = 16
    with pytest.raises(MyGPT2Error, match="fewer than one macro batch"):
        construct_data_loaders(cfg, tokens, tokens, PAD)


def test_val_loader(tmp_path) -> None:
    train_tokens = memmap_tokens(tmp_path, 300)
    val_tokens = memmap_tokens(tmp_path, 100)  # 13 blocks of T=8, the last one short
    cfg = make_cfg(batch_size=2, val_batch_size=5, eval_batches=20)
    _, val = construct_data_loaders(cfg, train_tokens, val_tokens, PAD)
    batches = list(val)
    assert len(val) == len(batches) == 3  # ceil(13 / 5): all of the val split, once
    assert [len(x) for x, _ in batches] == [5, 5, 3]
    assert torch.equal(torch.cat([y for _, y in batches])[-1, -5:], torch.full((5,), -100))
    again = list(val)  # each evaluation starts over: comparable losses
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    cfg.train.eval_batches = 2
    cfg.train.val_batch_size = 0  # means batch_size
    _, val = construct_data_loaders(cfg, train_tokens, val_tokens, PAD)
    assert [x.shape for x, _ in val] == [torch.Size([2, 8])] * 2
    shards = [construct_data_loaders(cfg, train_tokens, val_tokens, PAD, r, 2)[1] for r in (0, 1)]
    firsts = [next(iter(v))[0] for v in shards]
    assert not torch.equal(firsts[0], firsts[1])  # each rank evaluates its own batches


def test_block_size_check_names_the_split_and_the_fix() -> None:
    from mygpt2.data import check_block_sizes

    check_block_sizes(17, 17, 16)  # exactly one block of T + 1 each: fine
    with pytest.raises(MyGPT2Error, match=r"train split has 16 tokens.*T \+ 1 = 17.*--T"):
        check_block_sizes(16, 100, 16)
    with pytest.raises(MyGPT2Error, match=r"val split has 3 tokens.*T \+ 1 = 17"):
        check_block_sizes(100, 3, 16)


def test_too_short_inputs_and_the_end_of_the_loader(tmp_path) -> None:
    with pytest.raises(MyGPT2Error, match="1 tokens cannot make one"):
        BlockPairDataset(np.array([5], dtype=np.uint16), 4)
    tokens = memmap_tokens(tmp_path, 100)
    train, _ = construct_data_loaders(
        make_cfg(batch_size=2, macro_batch_size=4, max_steps=3), tokens, tokens, PAD
    )
    assert len(all_batches(train)) == 6
    with pytest.raises(StopIteration):  # the loader is used up, not one batch past it
        train.next_batch()


def test_resume_refuses_a_changed_shuffle_or_macro_batch(tmp_path) -> None:
    tokens = memmap_tokens(tmp_path, 300)
    cfg = make_cfg(batch_size=2, macro_batch_size=8, max_steps=6, shuffle=True)
    first, _ = construct_data_loaders(cfg, tokens, tokens, PAD)
    for _ in range(8):  # two whole steps
        first.next_batch()
    state = first.state_dict()
    unshuffled, _ = construct_data_loaders(
        make_cfg(batch_size=2, macro_batch_size=8, max_steps=6, shuffle=False), tokens, tokens, PAD
    )
    with pytest.raises(MyGPT2Error, match="shuffle"):
        unshuffled.load_state_dict(state)
    bigger, _ = construct_data_loaders(
        make_cfg(batch_size=4, macro_batch_size=16, max_steps=6, shuffle=True), tokens, tokens, PAD
    )
    with pytest.raises(MyGPT2Error, match="macro_batch_size changed"):
        bigger.load_state_dict(state)


def test_a_tiny_val_split_still_gives_every_rank_a_batch(tmp_path) -> None:
    train_tokens = memmap_tokens(tmp_path, 300)
    val_tokens = memmap_tokens(tmp_path, 9)  # one block of T=8
    cfg = make_cfg(batch_size=2, macro_batch_size=6, eval_batches=5)
    for rank in range(3):
        _, val = construct_data_loaders(cfg, train_tokens, val_tokens, PAD, rank, 3)
        batches = list(val)
        assert len(val) == len(batches) == 1  # the one batch, repeated on each rank
        assert torch.equal(batches[0][0][0], torch.from_numpy(val_tokens[:8].astype(np.int64)))


@pytest.mark.parametrize("T", [0, -1, 2.5, "8"])
def test_a_block_length_below_one_or_not_whole_is_refused(T):
    """BlockPairDataset from Python: T = 0 gave a raw ValueError from range(), T = -1 an empty
    dataset; both are one line naming T now."""
    with pytest.raises(MyGPT2Error, match=r"T \(the block length\) must be a whole number"):
        BlockPairDataset(np.arange(100), T)
    assert len(BlockPairDataset(np.arange(100), np.int64(10))) == 10
