"""`mygpt2 serve`: a local web playground and an OpenAI-compatible completions API.

    engine.py       the one model in memory, a first-come-first-served queue in front of it,
                    completions (streamed piece by piece) and the page's views
    completions.py  OpenAI's request fields checked, answers and errors shaped (plain data)
    runs.py         new rows of a run's metrics.jsonl, for the live training view
    app.py          the routes (Starlette), the API key, the uvicorn server
    static/         the page: HTML, JavaScript and CSS, no build step and nothing from the web

The web stack is an optional extra (`pip install 'mygpt2[serve]'`); nothing here is imported by
the rest of mygpt2, and `completions.py`, `runs.py` and `engine.py` do not need it.
"""
