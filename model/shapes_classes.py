"""Shapes World categories (dataset metadata): the vocabulary seem-tiny was trained on.

Things first, then stuff, in the order of the training set's `category_id`s. The scene
generator in training/ draws from these names; the model keeps them so that seem-tiny
has its vocabulary without the training package.
"""

SHAPES_THING_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "ring", "diamond", "cross")
SHAPES_STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "sand", "water", "wall", "floor")
SHAPES_CATEGORIES: tuple[str, ...] = SHAPES_THING_CLASSES + SHAPES_STUFF_CLASSES
