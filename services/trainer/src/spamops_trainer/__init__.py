"""spamops trainer service: DatasetReady -> Ray Tune + XGBoost -> MLflow -> ModelTrained"""
