"""``warmstart demo``: SSL pretraining, then few-label fine-tuning vs training from scratch, on scikit-learn's digits.

Everything runs offline on the 1,797 real 8x8 digit images that ship with scikit-learn. One module per job:
``data`` (images, splits), ``model`` (the small CNN), ``pretraining`` (``warmstart.pretrain``), ``finetune``
(Lightning + warmstart callbacks), ``experiment`` (the grid), ``report`` (table, results.json, plot), ``cli``.

Example:
    >>> from warmstart.demo.experiment import DemoConfig
    >>> DemoConfig().fractions
    (0.01, 0.05, 0.2)
"""
