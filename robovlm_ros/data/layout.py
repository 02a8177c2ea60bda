"""The LeRobot v3.0 dataset layout: file paths, limits and the feature names our policies read."""

CODEBASE_VERSION = "v3.0"
CHUNK_SIZE = 1000          # files per chunk folder
DATA_FILE_MB = 100         # a data file is closed past this size, the next episodes go to a new one
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
EXTRAS_PATH = "meta/robovlm_ros/episodes.jsonl"   # our own per-episode fields
QUALITY_DIR = "quality"                          # the quality report: report.json and a plot per episode
# policy camera -> dataset feature: the static camera and the gripper camera
IMAGE_KEYS = {"rgb": "observation.images.rgb", "hand_rgb": "observation.images.hand_rgb"}
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
