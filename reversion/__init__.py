"""ReVersion, the method, in plain torch: importable and testable without ComfyUI.

    words.py          <R>, {}, the stand-in, the basis prepositions and stop words
    errors.py         the error hierarchy (every message names the fix)
    trainer.py        TrainConfig, the Backend protocol and the training loop
    health.py         the checks every update passes (finite, no runaway vector)
    steering.py       the relation-steering contrastive loss
    timesteps.py      relation-focal timestep sampling
    exemplars.py      exemplar sets: folders (text.json) and image batches
    checkpoint.py     the checkpoint format (resume bit for bit)
    relation_file.py  the relation file format (safetensors; reads official .bin and A1111 .pt)
"""
