"""ulfine's micro world: a procedural captioned-image world, the tiny CLIP pretrained on it
(shipped as ``assets/micro_clip.safetensors``), its downstream LTSSL task (dataset
``microworld``) and the offline demo.

Modules: ``world`` (images + captions), ``pretrain`` (``pretrain()``, ``ulfine pretrain-micro``),
``task`` (24 colour+shape classes under a domain shift), ``zeroshot``, ``compare`` (engine runs ->
table rows), ``demo`` (``run_demo()``, ``ulfine demo``). See docs/microworld.md.
"""
