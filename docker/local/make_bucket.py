"""Create the documents bucket (the job compose's minio-bucket service runs with `mc mb
--ignore-existing`), against the S3 stand-in: endpoint, credentials and bucket from the environment."""

import os

import boto3

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ.get("S3_ENDPOINT", "http://minio:9000"),
    aws_access_key_id=os.environ["MINIO_ROOT_USER"],
    aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
    region_name="us-east-1",
)
bucket = os.environ.get("DOCUMENTS_BUCKET", "isn-documents")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print(f"bucket {bucket} ready")
