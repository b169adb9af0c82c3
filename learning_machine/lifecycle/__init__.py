"""The model lifecycle, in one place: train and register, the promotion rule, promote-deploy-record."""
