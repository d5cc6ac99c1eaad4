"""The deliver wing: from a chosen trial to a deployable model: retrain, exports (TorchScript, ONNX, int8),
the final report and study reports, and the verdict against uniform pruning. Depends on search and below.
"""
