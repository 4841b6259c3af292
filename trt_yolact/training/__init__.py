"""Training and fine-tuning on COCO-format data: the loss, the trainer, sparsity training and its logs."""
