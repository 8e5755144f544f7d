"""prepare → knowledge → encode in one driver, for ``spark-submit`` (tests/test_spark_cluster.py): one application,
so the cluster starts its executors once. The master is the launcher's (``spark-submit --master``).

Usage: ``spark-submit [--master URL] cluster_jobs.py RAW_DIR DATA_URI LLM_BASE_URL CACHE_DIR``
"""

from __future__ import annotations

import sys

from kar.pipeline import run_encode, run_knowledge, run_prepare


def main(raw: str, data: str, endpoint: str, cache: str) -> None:
    run_prepare(dataset="synthetic", path=raw, out=data)
    run_knowledge(
        kinds=["user", "item"], data_dir=data, out=f"{data}/knowledge", base_url=endpoint, cache_dir=cache, limit=3
    )
    # 0: in Spark tasks on the executors, not on the driver.
    run_encode(data_dir=data, driver_max_texts=0)


if __name__ == "__main__":
    main(*sys.argv[1:])
