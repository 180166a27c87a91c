"""Accuracy evaluation: LFW View 2 verification (``lfw``), open-set 1:N (``openset``), the metrics behind them
(``metrics``, pure numpy), a per-group bias view (``bias``), ROC/DET plots (``plots``) and the embedding cache
(``embeddings_cache``). CLI: ``facegate eval lfw|openset``; figures and commands: README, Accuracy."""
