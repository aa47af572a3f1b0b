"""What both the inversion and the models read of a face: 3D landmark templates and their projection, the VGG/LPIPS
distance, pixel similarity (PSNR, SSIM) and dlib identity scores."""
