"""User-facing steps, each runnable as `python -m train.<step> --help`.

The modules at this level are the steps only. What they use lives one level down: `train.common` (command line,
data reader, tokenizer, dtype), `train.sigphi` (SigPhi training and evaluation), `train.retrieval` (the
retriever-generator) and `train.bundled_data` (the bundled datasets).
"""
