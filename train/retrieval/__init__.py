"""The retriever-generator: its seed-CSV task (`task`), the models it starts from (`models`), the retriever's and
the generator's training (`retriever_training`, `generator_training`), the three stages in order
(`staged_training`) and its evaluation (`evaluation`)."""
