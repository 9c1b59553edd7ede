"""The bundled datasets `python -m train.make_dataset` writes: handwritten digits VQA (`digits`) and the
multiple-choice retrieval task built on them (`retrieval_vqa`)."""
