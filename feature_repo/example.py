"""kar-feast's example repo: entities user/item, profile views, knowledge views and two services.

Written by `kar.feast.write_example_repo`; the objects come from `kar.feast.example_objects`, the same call
`kar feast apply --data DATA` makes. Feast registers the top-level names bound below.
"""

from pathlib import Path

from kar.feast import example_objects

DATA = Path(__file__).resolve().parent / "../runs/demo/prepared"

# Bound by their names: user, item, user_profile, item_profile, user_knowledge, item_knowledge,
# user_knowledge_adapted, item_knowledge_adapted, ranking_training, ranking_serving, and kerec_knowledge
# (in ranking_training) once DATA holds LLM-KERec vectors (`kar encode --kind kerec`, then apply again).
OBJECTS = example_objects(data=DATA, offline_store="file")
globals().update({obj.name: obj for obj in OBJECTS})
