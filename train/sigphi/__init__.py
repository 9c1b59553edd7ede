"""Training and evaluating SigPhi: loading a folder (`loading`), the tiny random model (`tiny`), the QLoRA/LoRA
configs (`qlora`), TRL runs with defaults for the machine (`sft_trainer`), exact-match evaluation (`evaluation`),
and the quickstart's stand-in pretraining of tiny towers (`standins`)."""
