"""The DLA models, in Keras operations only (every backend): the building blocks (`blocks`, `layers`,
`resampling`), the table of variants (`configs`), the classifier builder (`dla`), the DLA-Up segmenter (`dla_up`),
ImageNet's preprocessing and class names (`imagenet`), and TensorFlow's fast kernels chosen inside the computation
(`fast_paths`)."""
