-- Runs once, when the postgres volume is first created: one database each for Prefect and MLflow.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
