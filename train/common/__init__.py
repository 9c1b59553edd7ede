"""What every step shares: the command line (`cli`), the VQA data reader and writer (`vqa_data`), the locally built
tokenizer (`tokenizer`) and the dtype decisions (`precision`)."""
