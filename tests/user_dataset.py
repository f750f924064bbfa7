"""README's example of a dataset of your own (tests/test_image_folders.py runs it): a folder
per class under <data.root>/leaves/{train,val}/."""

from landscape.data import register_image_folder

register_image_folder("leaves", folder="leaves", image_size=24, num_classes=3,
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
