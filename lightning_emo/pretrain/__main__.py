"""``python -m lightning_emo.pretrain fit|validate|test --config configs/pretrain/*.yaml`` (see :mod:`.cli`)."""

import sys

from lightning_emo.pretrain.cli import main

sys.exit(main())
