"""The six pipeline stages, one module each: prepare_data, pretrain_pool, distill, relabel, evaluate,
report. Each exposes run(cfg, inputs, outputs, ..., device, tracker); no stage imports another."""
