"""The retriever-generator's training, stage by stage: its seed-CSV data (`task`) and answers (`answers`), the models it
starts from (`models`) and the tiny preset's stand-in pretraining (`standins`), stage 1 (`retriever_stage`), stage 2
(`generator_stage`), stage 3 (`joint_stage`), what counts as relevant without gold documents (`pseudo_relevance`),
ranking (`ranking`), evaluation (`evaluation`), and the stages in order (`pipeline`)."""
