"""The batch dict's conditioning keys (CompVis convention), one place for every layer that reads them."""

# Keys that hold captions (CompVis "caption", Stable Diffusion "txt").
TEXT_KEYS = ("caption", "txt")
# The class label key; the original ClassEmbedder reads batch[its key].
CLASS_KEY = "class_label"
