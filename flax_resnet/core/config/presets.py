"""Named recipes: a preset fills in settings before the command line's flags override them.

Each cites where its numbers come from.
"""

from __future__ import annotations

from typing import Any

from flax_resnet.core.config.settings import AUTO_PRECISION

# The study notes' recipes. Seed 001 normalizes with std 0.3801 (MNIST's is 0.3081); kept as written.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed001": dict(model="mnist_resnet", dataset="mnist", optimizer="sgd", lr=0.01, momentum=0.5,
                    weight_decay=0.0, batch_size=64, epochs=10, schedule="constant", mean=(0.1307,),
                    std=(0.3801,), crop_padding=0, flip=False),
    "d2l": dict(model="d2l_resnet18", dataset="fashion_mnist", optimizer="sgd", lr=0.05, momentum=0.0,
                weight_decay=0.0, batch_size=256, epochs=10, schedule="constant", image_size=96,
                mean=(0.0,), std=(1.0,), crop_padding=0, flip=False),
    # He et al. 2015, CIFAR-10: 64k iterations of batch 128 (164 epochs), lr / 10 at 32k and 48k.
    "he2015_cifar": dict(model="resnet20", dataset="cifar10", optimizer="sgd", lr=0.1, momentum=0.9,
                         weight_decay=1e-4, batch_size=128, epochs=164, schedule="multistep",
                         milestones=(82.0, 123.0), crop_padding=4, flip=True),
    # torchvision's reference ResNet-50 recipe: lr 0.1 per 256 images, / 10 at epochs 30, 60 and 80.
    "imagenet": dict(model="resnet50", dataset="imagenet2012", optimizer="sgd", lr=0.1, momentum=0.9,
                     weight_decay=1e-4, batch_size=256, epochs=90, schedule="multistep",
                     milestones=(30.0, 60.0, 80.0), gamma=0.1, image_size=224, precision=AUTO_PRECISION),
    # The 10-class ImageNet subset: the same net and transforms in a short cosine run.
    "imagenette": dict(model="resnet50", dataset="imagenette", optimizer="sgd", lr=0.1, momentum=0.9,
                       weight_decay=5e-5, batch_size=128, epochs=20, schedule="cosine", warmup_epochs=1.0,
                       label_smoothing=0.1, image_size=160, precision=AUTO_PRECISION),
    # Fine-tuning pretrained weights (with --init-from). Li et al., "Rethinking the hyperparameters
    # for fine-tuning" (ICLR 2020), report the common practice for ResNets: the from-scratch recipe
    # with a smaller initial learning rate and a shorter schedule, typically lr 0.01, momentum 0.9,
    # weight decay 1e-4. 0.01 is a tenth of He et al.'s (2016) lr 0.1 at batch 256; scaled linearly
    # to batch 64 (Goyal et al. 2017) it is 0.0025. Cosine decay to zero (Loshchilov & Hutter,
    # SGDR, ICLR 2017) over a short run; label smoothing 0.1 (Szegedy et al. 2016, "Rethinking the
    # Inception architecture", and He et al. 2019, "Bag of tricks", who use 0.1 with cosine decay).
    "finetune": dict(optimizer="sgd", lr=0.0025, momentum=0.9, nesterov=False, weight_decay=1e-4, batch_size=64,
                     epochs=10, schedule="cosine", warmup_epochs=0.0, label_smoothing=0.1),
}
