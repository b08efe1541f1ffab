"""featalign: align base, RL-tuned and SFT-tuned language models in one sparse feature space.

Data flow: organisms / models -> activations (cache, store) -> crosscoder (align)
-> analysis (attribution, drift, success features) -> interventions.
"""

__version__ = "0.1.0"
