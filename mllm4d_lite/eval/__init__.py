"""Phase 4: answer extraction, evaluation on VLM4D-format benchmarks, reports."""
