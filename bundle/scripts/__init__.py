# Custom code imported by the bundle's configs as `scripts.<module>`: only what MONAI, torchvision or pydicom lack.
