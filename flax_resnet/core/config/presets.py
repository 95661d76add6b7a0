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
    # torchvision's V2 recipe for ResNet-50 (IMAGENET1K_V2, 80.858 % top-1): the command in
    # references/classification/README.md and the blog post "How to Train State-Of-The-Art Models
    # Using TorchVision's Latest Primitives" (Vryniotis, 2021): batch 128 on each of 8 GPUs with lr
    # 0.5 (here the global batch of 1024; scale lr linearly with --batch-size), cosine after 5
    # linear warmup epochs, 600 epochs, TrivialAugment, random erasing 0.1, weight decay 2e-5 and 0 on
    # the norms, label smoothing 0.1, mixup 0.2 / cutmix 1.0, the EMA (every 32 steps, decay
    # 0.99998), FixRes (train crops 176, evaluation resize 232, crop 224), RA sampler x4. The warmup
    # starts at lr x 0.01 (train.py's --lr-warmup-decay default), and the lr moves once an epoch, as
    # train.py steps its schedulers.
    "imagenet_tv2": dict(model="resnet50", dataset="imagenet2012", optimizer="sgd", lr=0.5, momentum=0.9,
                         weight_decay=2e-5, norm_weight_decay=0.0, batch_size=1024, epochs=600, schedule="cosine",
                         schedule_unit="epoch", warmup_epochs=5.0, warmup_start=0.01, label_smoothing=0.1,
                         mixup_alpha=0.2, cutmix_alpha=1.0,
                         auto_augment="ta_wide", random_erase=0.1, model_ema=True, model_ema_steps=32,
                         model_ema_decay=0.99998, train_crop_size=176, val_resize_size=232, image_size=224,
                         ra_sampler=True, ra_reps=4, precision=AUTO_PRECISION),
    # timm's "ResNet strikes back" A3 (Wightman, Touvron & Jegou 2021, table 1; resnet50.a3_in1k,
    # 78.05 % top-1 at 224): 100 epochs of 160-pixel crops at batch 2048, LAMB lr 8e-3 and weight
    # decay 0.02 (none on biases and norms: timm's filter for 1-d parameters), 5 warmup epochs and
    # timm's cosine (CosineLRScheduler, stepped once an epoch as timm's train.py does), BCE, mixup
    # 0.1 / cutmix 1.0 with timm's Mixup, rand-m6-mstd0.5-inc1, no EMA, no repeated augmentation, no
    # drop path; evaluation at 224 with crop fraction 0.95, bicubic as the weights' pretrained_cfg
    # says. timm's warmup starts from --warmup-lr and its cosine ends at --min-lr, whose train.py
    # defaults have changed between versions (1e-4 and 1e-6 in 2021, 1e-5 and 0 since); here both are 0.
    "imagenet_rsb_a3": dict(model="resnet50", dataset="imagenet2012", optimizer="lamb", lr=8e-3, weight_decay=0.02,
                            norm_weight_decay=0.0, bias_weight_decay=0.0, batch_size=2048, epochs=100,
                            schedule="timm_cosine", schedule_unit="epoch", warmup_epochs=5.0, loss="bce",
                            mixup_alpha=0.1, cutmix_alpha=1.0,
                            mixup_mode="timm", rand_augment="rand-m6-mstd0.5-inc1", train_crop_size=160,
                            image_size=224, eval_crop_fraction=0.95, interpolation="bicubic",
                            precision=AUTO_PRECISION),
    # resnet56 on CIFAR-10 with today's pieces, sized for one GPU: a combination made here, not a
    # published recipe. He et al.'s (2015) optimizer and batch (SGD 0.1, momentum 0.9, batch 128,
    # weight decay 1e-4, none on the norms as torchvision's V2), cosine after 5 warmup epochs over
    # 200 epochs, label smoothing 0.1 and mixup 0.2 / cutmix 1.0 as torchvision's V2, random erasing
    # 0.25, the EMA (every 32 steps, decay 0.9995: after the adjustment it spans about 4 % of the
    # run, as torchvision's V2 average spans about 23 of its 600 epochs), drop path 0.05
    # as timm's A1/A2. The in-memory set is padded-and-cropped and flipped on the device; the host
    # policies (--auto-augment) are for streamed sets.
    "cifar_modern": dict(model="resnet56", dataset="cifar10", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                         norm_weight_decay=0.0, batch_size=128, epochs=200, schedule="cosine", warmup_epochs=5.0,
                         label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0, random_erase=0.25,
                         model_ema=True, model_ema_steps=32, model_ema_decay=0.9995, drop_path_rate=0.05,
                         crop_padding=4, flip=True),
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

# What --help says of each (all but "default").
PRESET_SUMMARIES = {
    "seed001": "seed 001's MNIST run",
    "d2l": "d2l's ResNet-18 on 96x96 Fashion-MNIST",
    "he2015_cifar": "He et al.'s resnet20 on CIFAR-10",
    "imagenet": "torchvision's ResNet-50 recipe (V1) on imagenet2012",
    "imagenette": "a short ResNet-50 run on the 10-class subset",
    "imagenet_tv2": "torchvision's V2 recipe (IMAGENET1K_V2): 600 epochs, TrivialAugment, mixup/cutmix, EMA, FixRes",
    "imagenet_rsb_a3": "timm's ResNet strikes back A3: LAMB, BCE, 100 epochs at 160 px",
    "cifar_modern": "resnet56 on CIFAR-10 with today's pieces, for one GPU",
    "finetune": "with --init-from: lr 0.0025, 10 epochs of cosine, label smoothing 0.1",
}
