"""rlhf-lens: what did RLHF teach this model, and did it learn the reward it was given?"""

__version__ = "0.1.0"
