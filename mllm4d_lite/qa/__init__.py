"""Phase 1b: 4D annotations -> question/answer data (SFT, ST-CoT, RFT, benchmark); see docs/questions.md.

vocabulary (categories, phrasings, answer texts) -> motion (classifiers on a clip) -> builders
(questions per category) -> dataset (splits, balance, letters, records); agreement scores
estimated vs ground-truth answers; stage is the ``mllm4d qa`` command.
"""
