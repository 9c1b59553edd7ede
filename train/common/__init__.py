"""What every step shares: the command line (`cli`), the VQA data reader and writer (`vqa_data`), the locally built
tokenizer (`tokenizer`), the dtype decisions (`precision`) and the code revision results record (`provenance`)."""
