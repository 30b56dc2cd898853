"""Named defaults shared by the commands and the library functions: one place to read and change them."""

TRAIN_BATCH_SIZE = 32     # pairs per process and optimizer step (train.batch_size)
EVAL_BATCH_SIZE = 32      # images per image-tower forward pass in validation, evaluation, encoding
TEXT_BATCH_SIZE = 256     # prompts/reports per text-tower forward pass
N_BOOTSTRAP = 1000        # bootstrap resamples behind every printed 95% CI
N_BOOTSTRAP_FIGURE = 200  # resamples behind the drawn CI bands of figures (ROC)
