import sys

from keras_dla.cli import main

sys.exit(main())
