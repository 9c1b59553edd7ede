"""The bundled datasets `python -m train.make_dataset` writes: handwritten digits VQA (`digits`), the multiple-choice
retrieval task built on them (`retrieval_vqa`), and a retrieval task of pictures with articles and open-ended
answers (`encyclopedia`)."""
