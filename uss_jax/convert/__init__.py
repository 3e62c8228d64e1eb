"""Public PyTorch checkpoints -> Flax NNX state.

``common`` holds what every converter shares (safe state_dict loading, layout transposes, strict assignment, the
parity fixtures' weight rule); one module per model family does the key mapping: ``panns`` (PANNs Cnn14),
``audiomae`` (AudioMAE timm ViT), ``uss`` (bytedance/uss ResUNet30 and its query net), ``clap`` (LAION-CLAP HTS-AT
audio branch + audio projection).
Untrusted files are never unpickled: ``torch.load(..., weights_only=True)`` when torch is importable, otherwise
``.safetensors`` / ``.npz`` files read with numpy alone.
"""
