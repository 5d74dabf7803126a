"""Where every byte lives: the forward and training schedules (`schedule`), the lifetime-aware
arena (`arena`), buffer-sharing fusions (`fusion`), what a trained layer keeps of its input
(`saved_input`) and of its weights (`weight_store`), the SRAM model (`memory`) and the report (`report`).
"""
