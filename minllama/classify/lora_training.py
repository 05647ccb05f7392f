"""`--option lora`: only LoRA adapters and the head train (Hu et al. 2021, Sec. 4.2). apply_lora
freezes the backbone around the adapters it puts on the attention projections; the head, outside
the backbone, keeps training. --save_merged folds the adapters into the weights."""

from lora import apply_lora, merge_lora_weights
from minllama.classify.builders import Training


def lora_adapters(classifier, choice) -> None:
    apply_lora(classifier.llama, rank=choice.lora_rank, alpha=choice.lora_alpha)


LORA = Training("lora", lora_adapters, adapter_prefix="lora_", merge=merge_lora_weights)
