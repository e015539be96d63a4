"""ulfine's micro world: a procedural captioned-image world, its downstream LTSSL task and the
pretraining of the tiny CLIP shipped as ``assets/micro_clip.safetensors``.

Why a package of its own (layer 2, beside ``data`` and ``methods``): it generates data and a
foundation model; it knows nothing of the engine or of the applications that use them. The
dataset ``microworld`` (``ulfine.data.sources.microworld``) reads :mod:`.task`; the demo and the
accuracy benchmark live in :mod:`ulfine.apps`.

Modules: ``world`` (images + captions), ``task`` (24 colour+shape classes under a domain
shift), ``zeroshot`` (zero-shot prediction through the backbone's normaliser), ``pretrain``
(``pretrain()``, ``ulfine pretrain-micro``). See docs/microworld.md.
"""
