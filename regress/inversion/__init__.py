"""GAN inversion of real photos: alignment and camera estimation (`align`), latent projection and tuning (`project`)."""
