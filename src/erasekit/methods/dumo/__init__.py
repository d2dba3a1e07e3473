"""DuMo (AAAI 2025): a trainable copy of the UNet's encoder that erases through the skip connections.

``modules`` holds the network and puts it into a pipeline (module kind ``dumo``: applying an edit imports nothing
else), ``method`` trains it.
"""
