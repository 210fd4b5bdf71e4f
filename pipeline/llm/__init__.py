"""The LLM request engine: a table of chat requests in, Parquet shards of completions out, resumable
and within budget, online (Dask) or through a provider's Batch API; ``generate`` and ``annotate`` run on it.

    spec.py      what a run is given (RunSpec) and gives back (RunSummary); the callers' hooks
    run.py       the run skeleton: validate, shards, resume + lineage, ledger, dry run, waves, manifest
    online.py    executor: Dask tasks (shard.py) sharing each worker's request pool, cluster-wide limits
    batch.py     executor: submit, poll, collect through the Batch API
    backends.py  the model: an OpenAI-compatible server, in-process transformers, a server's Batch API
    resume.py    what an output folder holds; refuse or discard stale rows
    rows.py      the completed row, built once; a shard's part from its journal
    journal.py, ledger.py, limits.py, flags.py, config.py; stub_server.py (the test server)
"""
