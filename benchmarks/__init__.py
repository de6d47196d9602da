"""Side-by-side benchmark of adapter-store against safetensors, torch.save and PEFT.

Run ``python -m benchmarks`` (``--smoke`` for tiny sizes, ``--json PATH`` for the
results); see docs/performance.md for the method and the latest table.
"""
