"""Training: the data pipelines (`datasets`, tf.data; `fashion_mnist`; `augment`), the fit with its distribution
strategies and schedules (`fit`), the run folder that makes a killed run resumable (`run_folder`), and the
segmentation loss, metric and multi-scale prediction (`segmentation`)."""
