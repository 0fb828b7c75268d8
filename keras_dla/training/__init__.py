"""Training: the data pipelines (`datasets`, tf.data; `fashion_mnist`; `augment`), the names training accepts
(`choices`, which imports nothing), the run's settings and their checks (`config`), devices and distribution
strategies (`distribute`), learning-rate schedules and the optimizer (`schedules`), losses and metrics (`losses`),
two patches of Keras' multi-worker trainer (`keras_patches`), the fit itself (`fit`) and the run folder that makes
a killed run resumable (`run_folder`); evaluation figures (`evaluation`) and pictures (`plots`); and the
segmentation loss, metric and multi-scale prediction (`segmentation`)."""
