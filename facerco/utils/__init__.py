"""Small shared helpers, importable from every package (they import no other facerco package).

- ``io``: atomic writes (the one writer) and checksums
- ``callbacks``: the engine's callback protocol, here so that ``route`` and ``train`` share it without a loop
- ``device``: device choice
- ``workers``: how worker processes start (forkserver, never fork of a threaded process)
- ``threads``: torch CPU threads for a job (the cores not busy at start, or pinned: ``train.threads``)
"""
