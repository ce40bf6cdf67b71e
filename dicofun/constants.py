"""Constants shared by several rooms (the bottom layer: imports nothing)."""

# ImageNet normalisation of the pretrained backbones (and the default of the
# input pipeline and of the figures' de-normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
