"""Phase 1b: 4D annotations -> question/answer data (SFT, ST-CoT, RFT, benchmark)."""
