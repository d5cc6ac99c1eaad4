"""The train wing: recovery by distillation (the loss, BatchNorm re-calibration, the fine-tune loops) and the
cached teacher stream. Depends on data and the ground floor.
"""
