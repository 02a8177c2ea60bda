"""MJCF of the tabletop scene, built from primitives (no model files to download).

A 6-joint arm (base yaw, shoulder, elbow, wrist pitch, wrist roll, tool yaw) with a two-finger
parallel gripper (coupled slide joints), position-controlled joints, a static camera and a camera on
the hand, and three coloured 4 cm blocks on a table. Arm geoms touch the table and the blocks but
never each other (contype / conaffinity bits).
"""
from __future__ import annotations

COLORS = {"red": (0.85, 0.1, 0.1, 1), "green": (0.1, 0.7, 0.2, 1), "blue": (0.15, 0.3, 0.9, 1)}

ARM_BODY = '''    <body name="base" pos="0 0 0.05">
      <geom class="arm" type="cylinder" size="0.05 0.05" rgba="0.3 0.3 0.3 1"/>
      <body name="link1" pos="0 0 0.05">
        <joint name="joint1" axis="0 0 1" range="-3.1 3.1"/>
        <geom class="arm" type="cylinder" size="0.04 0.04" rgba="0.5 0.5 0.5 1"/>
        <body name="link2" pos="0 0 0.05">
          <joint name="joint2" axis="0 1 0" range="-2 2"/>
          <geom class="arm" type="capsule" fromto="0 0 0 0 0 0.3" size="0.03" rgba="0.6 0.6 0.65 1"/>
          <body name="link3" pos="0 0 0.3">
            <joint name="joint3" axis="0 1 0" range="-2.6 2.6"/>
            <geom class="arm" type="capsule" fromto="0 0 0 0.3 0 0" size="0.025" rgba="0.6 0.6 0.65 1"/>
            <body name="link4" pos="0.3 0 0">
              <joint name="joint4" axis="0 1 0" range="-2.6 2.6"/>
              <geom class="arm" type="capsule" fromto="0 0 0 0.05 0 0" size="0.02" rgba="0.5 0.5 0.55 1"/>
              <body name="link5" pos="0.05 0 0">
                <joint name="joint5" axis="1 0 0" range="-3.1 3.1"/>
                <geom class="arm" type="sphere" size="0.02" rgba="0.5 0.5 0.55 1"/>
                <body name="hand" pos="0 0 0" euler="0 1.5708 0">
                  <joint name="joint6" axis="0 0 1" range="-3.1 3.1"/>
                  <geom class="arm" type="box" size="0.02 0.05 0.015" pos="0 0 0.015" rgba="0.2 0.2 0.25 1"/>
                  <camera name="gripper" pos="0.08 0 -0.03" xyaxes="0 1 0 0.970 0 0.242" fovy="80"/>
                  <site name="tcp" pos="0 0 0.09" size="0.005" rgba="0 0 0 0"/>
                  <body name="finger_l" pos="0 0.03 0.06">
                    <joint name="finger_l" type="slide" axis="0 1 0" range="-0.03 0.0" damping="1"/>
                    <geom class="arm" type="box" size="0.01 0.006 0.03" rgba="0.15 0.15 0.15 1" friction="1.5 0.01 0.001" condim="4"/>
                  </body>
                  <body name="finger_r" pos="0 -0.03 0.06">
                    <joint name="finger_r" type="slide" axis="0 -1 0" range="-0.03 0.0" damping="1"/>
                    <geom class="arm" type="box" size="0.01 0.006 0.03" rgba="0.15 0.15 0.15 1" friction="1.5 0.01 0.001" condim="4"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>'''  # the arm and its cameras, joint1..joint6 and the fingers


def scene_xml(image: int = 96) -> str:
    blocks = "".join(f'''
    <body name="{c}" pos="0.4 0 0.025"><freejoint name="{c}_free"/>
      <geom name="{c}_geom" type="box" size="0.02 0.02 0.02" rgba="{' '.join(map(str, rgba))}" mass="0.05" friction="1.5 0.01 0.001" condim="4"/>
    </body>''' for c, rgba in COLORS.items())
    return f'''<mujoco model="tabletop">
  <compiler angle="radian"/>
  <option timestep="0.002" gravity="0 0 -9.81"/>
  <visual><global offwidth="{image}" offheight="{image}"/><quality shadowsize="0" offsamples="0"/></visual>
  <default>
    <joint damping="2" armature="0.05"/>
    <position kp="400" kv="40" forcerange="-80 80"/>
    <!-- arm geoms touch the table and the blocks, never each other (contype/conaffinity bits) -->
    <default class="arm"><geom contype="2" conaffinity="0"/></default>
    <geom contype="1" conaffinity="3"/>
  </default>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" castshadow="false"/>
    <geom name="table" type="plane" size="1 1 0.05" rgba="0.75 0.72 0.65 1"/>
    <camera name="static" pos="0.7 0 0.54" xyaxes="0 1 0 -0.866 0 0.5" fovy="42"/>
{ARM_BODY}{blocks}
  </worldbody>
  <equality><joint joint1="finger_l" joint2="finger_r"/></equality>
  <actuator>
    {''.join(f'<position name="a{i}" joint="joint{i}" kp="600" kv="60"/>' for i in range(1, 7))}
    <position name="grip" joint="finger_l" kp="800" kv="20" ctrlrange="-0.03 0" forcerange="-40 40"/>
  </actuator>
</mujoco>'''
